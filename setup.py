"""Builds the optional C++ CPU kernels in csrc/ (ninja, -O3, OpenMP).

No -march: the .so runs on every x86-64 CPU; the hot loops are compiled once per instruction set
(baseline, AVX2, AVX-512) and picked at run time (``csrc/common.h``). -ffp-contract=off keeps
the three copies bit-identical (no FMA contraction in only some of them).

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
        extra_compile_args={"cxx": ["-O3", "-ffp-contract=off", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
