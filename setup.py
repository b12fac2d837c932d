"""Builds the optional C++ CPU kernels in csrc/ (ninja, -O3, OpenMP).

Install with ``pip install --no-build-isolation -e .`` so the extension is compiled
against the torch already installed (build isolation would fetch another torch).
"""
import glob

from setuptools import setup

ext_modules, cmdclass = [], {}
sources = sorted(glob.glob("csrc/*.cpp"))
if sources:
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules = [CppExtension(
        "sas_fast._C", sources,
        extra_compile_args={"cxx": ["-O3", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
