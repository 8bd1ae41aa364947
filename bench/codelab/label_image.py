"""The codelab's scripts/label_image.py ("TensorFlow for Poets 2"), minimal and unchanged in what
it does, on TensorFlow 2's compat.v1 API: one photo per process, the graph loaded, the photo
decoded and resized by TensorFlow ops in a session of their own, the graph run, the top 5
printed. The original: github.com/googlecodelabs/tensorflow-for-poets-2, scripts/label_image.py.

Changes: `tf.` -> `tf.compat.v1.` where TensorFlow 2 moved it, and --input_mean/--input_std
read as floats (the original's `type=int` cannot take MobileNet's 127.5).

    python bench/codelab/label_image.py --graph retrained_graph.pb --labels retrained_labels.txt \
        --image photo.jpg --input_height 128 --input_width 128 --input_mean 127.5 --input_std 127.5
"""

import argparse
import time

import numpy as np
import tensorflow as tf


def load_graph(model_file):
    graph = tf.Graph()
    graph_def = tf.compat.v1.GraphDef()
    with open(model_file, "rb") as f:
        graph_def.ParseFromString(f.read())
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def)
    return graph


def read_tensor_from_image_file(file_name, input_height=299, input_width=299, input_mean=0,
                                input_std=255):
    file_reader = tf.io.read_file(file_name, "file_reader")
    if file_name.endswith(".png"):
        image_reader = tf.image.decode_png(file_reader, channels=3, name="png_reader")
    elif file_name.endswith(".gif"):
        image_reader = tf.squeeze(tf.image.decode_gif(file_reader, name="gif_reader"))
    elif file_name.endswith(".bmp"):
        image_reader = tf.image.decode_bmp(file_reader, name="bmp_reader")
    else:
        image_reader = tf.image.decode_jpeg(file_reader, channels=3, name="jpeg_reader")
    float_caster = tf.cast(image_reader, tf.float32)
    dims_expander = tf.expand_dims(float_caster, 0)
    resized = tf.compat.v1.image.resize_bilinear(dims_expander, [input_height, input_width])
    normalized = tf.divide(tf.subtract(resized, [input_mean]), [input_std])
    sess = tf.compat.v1.Session()
    return sess.run(normalized)


def load_labels(label_file):
    return [line.rstrip() for line in tf.io.gfile.GFile(label_file).readlines()]


if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", required=True)
    parser.add_argument("--graph", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--input_height", type=int, default=224)
    parser.add_argument("--input_width", type=int, default=224)
    parser.add_argument("--input_mean", type=float, default=128)
    parser.add_argument("--input_std", type=float, default=128)
    parser.add_argument("--input_layer", default="input")
    parser.add_argument("--output_layer", default="final_result")
    args = parser.parse_args()

    graph = load_graph(args.graph)
    t = read_tensor_from_image_file(args.image, input_height=args.input_height,
                                    input_width=args.input_width, input_mean=args.input_mean,
                                    input_std=args.input_std)
    input_operation = graph.get_operation_by_name("import/" + args.input_layer)
    output_operation = graph.get_operation_by_name("import/" + args.output_layer)
    with tf.compat.v1.Session(graph=graph) as sess:
        start = time.time()
        results = sess.run(output_operation.outputs[0], {input_operation.outputs[0]: t})
        end = time.time()
    results = np.squeeze(results)
    top_k = results.argsort()[-5:][::-1]
    labels = load_labels(args.labels)
    print(f"\nEvaluation time (1-image): {end - start:.3f}s\n")
    for i in top_k:
        print(f"{labels[i]} (score={results[i]:0.5f})")
