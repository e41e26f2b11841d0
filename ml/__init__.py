"""Flask-free model code: image preprocessing, backbones and ImageNet labels.

Importing this package (or ``ml.preprocess``) does not import TensorFlow or Keras;
the modules that need them import them inside the functions that build models.
"""
