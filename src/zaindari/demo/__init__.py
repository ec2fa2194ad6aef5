"""``zaindari demo``: the whole loop on embedded defaults, as named steps, with a report.

:mod:`~zaindari.demo.plant` says what is simulated and how the readings travel,
:mod:`~zaindari.demo.steps` runs the loop against the embedded AWS, and
:mod:`~zaindari.demo.report` reads the run's outputs back and writes ``summary.json``, plots and HTML.
"""
