"""The "TensorFlow for Poets 2" codelab's models: a TF1 frozen graph and its labels.

    graph       a graph file in: its architecture, tensors, input size and classes
    importer    a graph and labels in, a flowers bundle out (`flowers import-poets`)

May import the top-level modules of `flowers.models` and `runtime`; never `caches`, `training`
or `export`.
"""
