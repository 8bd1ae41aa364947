"""Features cached on disk under FLOWERS_HOME, keyed by the photo's content.

    bottlenecks   pooled base-network vectors (the codelab recipe)
    activations   split-layer activations of each photo's views (the fine-tune recipe)
    disk          what the caches hold per kind and network, and clearing them

May import the top-level modules of `flowers.models` and `runtime`; never `training`, `codelab`
or `export`.
"""
