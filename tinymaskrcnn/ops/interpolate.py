"""(being written)"""
def interpolate(*args, **kwargs):
    raise NotImplementedError("interpolate is being written")


