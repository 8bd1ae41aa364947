"""Running networks: photos or pixel batches in, features or probabilities out.

    tensorflow_setup  TensorFlow's thread pools, sized so worker processes share the cores
    batching          batches prepared by a thread pool while the network runs the last one
    litert            a Keras model in, a LiteRT flatbuffer out
    converted         LiteRT conversions of feature networks, made once and kept
    runners           a bundle in, the runner that labels with it (LiteRT, Keras, a codelab graph)
    decisions         a bundle's thresholds in, each photo's accept / review / unknown out
    predict           photos and a runner in, each photo's top labels and decision out

May import the top-level modules of `flowers.models` (errors, atomic, decode, networks, bundle);
never `caches`, `training`, `codelab` or `export`.
"""
