"""Privacy of training data: accounting, membership inference, shadow models, canary auditing, the scenario's
pipeline and its table. DP-SGD itself is a training transformation: bench/privacy/dp_sgd.py."""
