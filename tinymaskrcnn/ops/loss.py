"""(being written)"""
def binary_cross_entropy_with_logits(*args, **kwargs):
    raise NotImplementedError("binary_cross_entropy_with_logits is being written")


def cross_entropy(*args, **kwargs):
    raise NotImplementedError("cross_entropy is being written")


def smooth_l1_loss(*args, **kwargs):
    raise NotImplementedError("smooth_l1_loss is being written")


