"""The flowers ML pipeline: photos in, features, a trained classifier and a model bundle out;
a bundle and photos in, labels out. Plain functions and classes over paths and arrays; nothing
here imports Celery, the CLI or the worker. TensorFlow is imported only inside the modules that
build or run a network.

Where both flows meet (each imports only `errors`, and `atomic` for writing):
    errors      the one error hierarchy (FlowersError)
    atomic      files written whole or not at all
    ownership   proof that flowers wrote a file or folder, asked before replacing one
    dataset     photo folders in: the walk, classes, the stable split
    decode      photo files in, pixel arrays out
    views       a photo's augmented views (as-is, mirrored, random crops): what the
                activation cache stores and the fine-tune recipe trains on
    networks    the base networks by name (registry, weights)
    bundle      a trained model as a self-describing folder (also writes its model.tflite
                through runtime.litert)
    export      a bundle in, other formats out (above runtime and codelab)

Sub-packages, each importing only those modules and the sub-packages listed before it:
    runtime     running networks: TensorFlow threads, batching, LiteRT conversion and its cache,
                the runners a bundle is labelled with, labelling itself (predict)
    caches      feature caches on disk: bottlenecks, split-layer activations, their listing
    training    recipes and the training pipeline: layers, head, fine-tune, retrain,
                cross-validation
    codelab     the codelab's TF1 graphs: read one, import it as a bundle
"""
