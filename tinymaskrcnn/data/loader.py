"""Batches of ``(images, targets)`` in a seeded order that a checkpoint can resume exactly.

Everything random is a pure function of (seed, epoch, ...): epoch e's order is a permutation
drawn from a generator seeded with (seed, e), and sample i's augmentation in epoch e draws from
one seeded with (seed, e, i). So the loader's whole state is three numbers (seed, epoch,
position within the epoch), and a run restored from ``state_dict()`` sees the same batches and
the same flips as one that never stopped.
"""
import inspect

import numpy as np

# distinct leading words keep the order stream and the augmentation streams apart
_ORDER, _AUGMENT = 0, 1


def takes_generator(transform):
    """True when ``transform``'s signature names a third positional parameter (or one called
    ``rng``): it is the project's kind, ``t(image, target, rng)``. A callable taking ``*args``
    (torchvision's transforms) or two parameters is torchvision's kind, ``t(image, target)``."""
    try:
        parameters = inspect.signature(transform).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.name == "rng" for p in parameters)


class DataLoader:
    """Iterate over ``dataset`` in batches: each step yields (list of images, list of targets).

    ``dataset`` needs ``len`` and ``dataset[i] -> (image, target)``. ``transforms`` is called
    as ``transforms(image, target, rng)`` with the sample's own generator when its signature
    names a third parameter (the project's transforms do), and as ``transforms(image, target)``
    otherwise: torchvision's style, whose randomness comes from torch's generator and so is not
    repeated by a resumed run. torchvision's v2 transforms pass NumPy arrays through untouched
    (a flip flips nothing): put a function that wraps the sample into tv_tensors first (see
    docs/from-torchvision.md). Iterating runs the rest of the current epoch, then moves to the
    next one; breaking off mid-epoch and iterating again carries on where it stopped.
    """

    def __init__(self, dataset, batch_size=1, shuffle=True, seed=0, transforms=None, drop_last=False):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected a non-negative integer")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: nothing to load (a CocoDetection with skip_empty=True "
                             "skips images without annotations)")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.seed, self.transforms, self.drop_last = int(seed), transforms, bool(drop_last)
        self._transforms_take_rng = transforms is not None and takes_generator(transforms)
        self.epoch, self.position = 0, 0  # position: samples of this epoch already handed out

    def __len__(self):
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def samples_per_epoch(self):
        return len(self) * self.batch_size if self.drop_last else len(self.dataset)

    def order(self, epoch):
        """The dataset indices of ``epoch`` in the order they are served."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, _ORDER, epoch]).permutation(n)

    def sample_rng(self, epoch, index):
        """The generator that augments dataset item ``index`` in ``epoch``."""
        return np.random.default_rng([self.seed, _AUGMENT, epoch, index])

    def load(self, epoch, index):
        """Dataset item ``index`` as served in ``epoch`` (transforms applied)."""
        image, target = self.dataset[index]
        if self._transforms_take_rng:
            image, target = self.transforms(image, target, self.sample_rng(epoch, index))
        elif self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __iter__(self):
        end = self.samples_per_epoch
        if self.position >= end:  # a state from elsewhere that stops at an epoch's end
            self.epoch, self.position = self.epoch + 1, 0
        epoch, order = self.epoch, self.order(self.epoch)
        for start in range(self.position, end, self.batch_size):
            indices = order[start:min(start + self.batch_size, end)]
            pairs = [self.load(epoch, int(i)) for i in indices]
            # advanced before the yield, so a state saved while holding this batch is past it,
            # and the epoch rolls over with its last batch
            done = start + len(indices)
            self.epoch, self.position = (epoch + 1, 0) if done >= end else (epoch, done)
            yield [p[0] for p in pairs], [p[1] for p in pairs]

    def state_dict(self):
        """What a checkpoint needs to resume the data order exactly (JSON-serialisable)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "shuffle": self.shuffle,
                "num_samples": len(self.dataset)}

    def load_state_dict(self, state):
        """Resume from ``state_dict()``; the data set must be the same size as when it was saved."""
        if state["num_samples"] != len(self.dataset):
            raise ValueError(f"the loader state was saved for {state['num_samples']} samples but the dataset has "
                             f"{len(self.dataset)}: resume with the same data set")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self.shuffle = bool(state["shuffle"])
