"""Review pages: a labelled CSV or a model bundle in, one self-contained HTML page out."""
