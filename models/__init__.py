"""The flowers ML pipeline: photos in, features, a trained classifier and a model bundle out;
a bundle and photos in, labels out. Plain functions and classes over paths and arrays; nothing
here imports Celery, the CLI or the worker. TensorFlow is imported only inside the modules that
build or run a network.

Where both flows meet, the modules at this level; they import one another and no sub-package:
    errors      the one error hierarchy (FlowersError)
    atomic      files written whole or not at all
    typed       JSON in, a dataclass's fields out, each checked against its annotation
    ownership   proof that flowers wrote a file or folder, asked before replacing one
    dataset     photo folders in: the walk, classes, the stable split
    decode      photo files in, pixel arrays out
    views       a photo's augmented views (as-is, mirrored, random crops): what the
                activation cache stores and the fine-tune recipe trains on
    networks    the base networks by name (registry, weights), the library versions used
    layers      the Keras layers bundles hold beyond the standard ones
    manifest    a bundle's manifest.json checked: field types, labels.txt, the model's shapes
    bundle      a trained model as a self-describing folder: written (its model.tflite handed
                in by whoever converted it) and read

Sub-packages, each importing only the modules above and the sub-packages it names:
    runtime     running networks: TensorFlow threads, batching, LiteRT conversion and its cache,
                the runners a bundle is labelled with, labelling itself (predict); no other
    caches      feature caches on disk: bottlenecks, split-layer activations, their listing;
                runtime
    training    recipes and the training pipeline: head, fine-tune, retrain, calibration,
                cross-validation; runtime and caches
    codelab     the codelab's TF1 graphs: read one, import it as a bundle; runtime
    export      a bundle in, other formats out (LiteRT, SavedModel); runtime and codelab
Nothing imports `export` but the CLI.
"""
