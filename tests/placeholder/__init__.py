"""Empty placeholder package, installed as torchvision and torchaudio in the self-attention-edit test bed only.

Neither has a CPU build on the package registry that matches torch 2.13.0. ComfyUI imports them at load
time from model files (cosmos, audio VAEs, ...) that the families this pack tests never call. The package
takes the name it is installed under: any `<name>.X` submodule or attribute resolves to another
placeholder; calling one raises."""

import importlib.abc
import importlib.machinery
import sys
import types


_ROOT = __name__


class _Placeholder(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = _Placeholder(f"{self.__name__}.{name}")
        setattr(self, name, child)
        sys.modules[child.__name__] = child
        return child

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a test-bed placeholder; install the real {_ROOT}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(_ROOT + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.append(_Finder())
__version__ = "0.0.0+placeholder"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module(f"{__name__}.{name}")
