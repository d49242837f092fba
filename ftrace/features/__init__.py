"""Per-example vectors a model gives a loss batch: hidden-state embeddings and projected loss
gradients. Used by ingest (training examples) and by query and bench (the query), so that both
sides are featurized by the same code."""
