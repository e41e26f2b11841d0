"""The catalogue-tuned backbone: the upper layers of an ImageNet backbone fine-tuned on the
catalogue's own labels, on a CPU, in minutes.

ImageNet features group photos by what ImageNet cares about. Heads trained on frozen features
plateau (gender + article type about 78 % on held-out photos): Flats and Heels, Tshirts and
Tops, Men's and Women's watches stay close together. Fine-tuning the layers that see the
whole product moves them apart, and what it learns is what shoppers mean by "similar".

How, without a GPU:

1. the backbone's lower layers stay frozen. Their output at a cut layer (the *feature maps*:
   20x20x40 for EfficientNet-Lite0 at 160 px) is computed once per catalogue photo and once
   for its mirror image, kept as half floats, and redone only for photos that change;
2. the layers above the cut are trained on those maps (BatchNorm statistics frozen, maps
   shifted at random by a cell, photo or mirror image at random) with three classifiers on
   the unit-normalised pooled features: sub-category, gender + article type, and base colour
   (which also sees the colour descriptor of ``ml.colour``);
3. the served embedding concatenates four unit-length parts, each scaled by the square root
   of its share of the cosine (``fusion``): the tuned backbone's pooled features (averaged
   over the photo and its mirror image), the square roots of the type classifier's
   probabilities (their cosine is the Bhattacharyya coefficient of two predictions: same
   kind of product), the colour descriptor, and the square roots of the colour
   classifier's probabilities;
4. the three classifiers are linear in the features and colour descriptor parts, so they
   are saved as photo-search heads (``ml.heads.HeadSet``) over the embedding: a photo
   search needs one forward pass.

The tuned network is stored as the weights of the layers above the cut plus the classifiers;
its model id is ``<base model id>.ft<digest of the weights>``. Training needs Keras; the
heads it writes are NumPy.

Shoppers' own photos are not studio photos: with ``shopper_views`` set, each catalogue photo
is also made into photos a shopper might take of the product (``shoppers``: another
background, light, angle, blur, cut out as photo search cuts uploads), their maps are kept
like the studio ones, and a share of the training steps takes one of them instead.

Modules: ``config`` (settings, cut layers, model ids, class names), ``feature_maps`` (the
frozen lower layers), ``shoppers`` (shopper-like views), ``network`` (the tuned network and
the embedder built from it), ``training`` (Keras training), ``scoring`` (accuracy as served) and ``temperature`` (each
classifier's confidence temperature).
"""
