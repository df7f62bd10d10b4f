"""Study files: paper tables and comparisons as rows of (teachers, student) × method columns (see mkdlab.study)."""
