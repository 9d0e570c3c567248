"""The length-generalization lab: train-short / test-long comparisons, context extension, and pictures.

* :mod:`posenc.lab.arrays` -- the numbers behind every picture (testable arrays, no drawing);
* :mod:`posenc.lab.plots` -- PNG drawing with matplotlib's Agg canvas (imported only when a picture is drawn);
* :mod:`posenc.lab.compare` -- train each encoding x seed on one task, evaluate at every test length;
* :mod:`posenc.lab.extend` -- evaluate a RoPE checkpoint past its training length under each scaling;
* :mod:`posenc.lab.runs` -- one (encoding, seed) run: config, model, resumable training, evaluation by length;
* :mod:`posenc.lab.tasks` -- copy-style tasks and the character LM data of those runs;
* :mod:`posenc.lab.results` -- ``results.csv`` rows and their summary table.

Importing the package is quiet and does not import matplotlib.
"""
