"""Training: photos and a recipe in, a fitted classifier, its metrics and a bundle out.

    recipe      the recipes by name; the fine-tune recipe's settings as a frozen dataclass
    head        the codelab recipe: a softmax layer on bottlenecks
    finetune    the fine-tune recipe: the top of the network on split-layer activations
    trainer     either recipe: its features computed (cached) and a classifier fitted
    report      report.png: learning curves and the confusion matrix
    calibration temperature scaling on held-out scores; ECE, reliability, precision curves
    trust       held-out photos in, a bundle's temperature, acceptance curve, unknown threshold
    retrain     a retraining request in, a bundle out: the whole pipeline
    folds       stratified k-fold assignment
    evaluate    cross-validation of recipes

May import the top-level modules of `flowers.models`, `runtime` and `caches`; never `codelab`
or `export`.
"""
