"""The synthetic set: patients on the MNI152 brain with FLAIR lesions (``anatomy``, ``lesions``), or
ellipse phantoms (``phantom``), written as the Kaggle set's folders (``generate``). The download stage
uses it for ``data.source: synthetic``; the tests and benchmarks make their data with it."""
