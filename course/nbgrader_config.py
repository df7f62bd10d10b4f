"""nbgrader configuration of the mkdlab course edition.

The course has one assignment per lesson, named after the notebook (``00_setup_and_data`` …). The instructor
versions (with solutions and hidden tests) are the notebooks in ``notebooks/``; ``python scripts/course.py release``
copies them into ``source/<lesson>/`` of a temporary course root that uses this file, runs
``nbgrader generate_assignment`` there and keeps the student versions under ``course/release/<lesson>/``.
To grade submissions with nbgrader's own commands, run them from this folder (``nbgrader autograde …``).
"""

c = get_config()  # noqa: F821 (nbgrader's config loader provides get_config)

c.CourseDirectory.course_id = "mkdlab"
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
# The student version keeps no outputs; nbgrader also locks the test cells and records their checksums.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
