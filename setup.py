"""Build of seqex: the Cython extensions, listed one by one, and the `seqex` command.

SEQEX_CHECKED=1 builds the checked flavour (bounds, wraparound and overflow checks on);
the default is the release flavour. The test suite passes in both.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

CHECKED = os.environ.get("SEQEX_CHECKED", "0") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": CHECKED,
    "wraparound": CHECKED,
    "overflowcheck": CHECKED,
    "initializedcheck": CHECKED,
    "cdivision": False,  # keep Python semantics of // and % on negative numbers
    "embedsignature": True,
}

EXTENSIONS = [
    Extension("mq._frame", ["mq/_frame.pyx"], extra_compile_args=["-O2"]),
    # gcc's -O2 inlining limits leave the engine's hot path (apply_frame -> _record ->
    # _dispatch -> _new_order -> _book_link ...) a chain of calls; its `inline` methods are
    # meant to fold into one loop (docs/crossengine.md, "Cost per operation").
    Extension("crossengine.engine", ["crossengine/engine.pyx"],
              extra_compile_args=["-O2", "--param=max-inline-insns-single=2000",
                                  "--param=large-function-growth=2000",
                                  "--param=large-stack-frame-growth=2000",
                                  "--param=inline-unit-growth=200"]),
    # plain Python compiled with its augmenting engine.pxd (typed state classes)
    Extension("tradingengine.engine", ["tradingengine/engine.py"], extra_compile_args=["-O2"]),
    # plain Python compiled as it is: the engine calls its formulas on every fill and order,
    # and interpreted they were a Python frame each (it keeps wraparound on: tiers[-1])
    Extension("tradingengine.margin", ["tradingengine/margin.py"], extra_compile_args=["-O2"]),
]

setup(
    name="seqex",
    version="0.1.0",
    description="Exchange core for leveraged perpetual futures on a sequenced, replicated log",
    packages=find_packages(include=["mq*", "replicator*", "crossengine*", "tradingengine*",
                                    "liqengine*", "deploy*", "gateway*"]),
    package_data={"": ["*.pyi", "*.pxd", "*.toml"], "gateway.marketdata": ["page.html"]},
    ext_modules=cythonize(EXTENSIONS, compiler_directives=DIRECTIVES,
                          annotate=os.environ.get("SEQEX_ANNOTATE") == "1"),
    python_requires=">=3.11",
    install_requires=["pyzmq>=25", "msgpack>=1.0", "lmdb>=1.4", "uvloop>=0.19", "rich>=13",
                      "prometheus-client>=0.17", "websockets>=14"],
    # The tests build the checked flavour in place (setup.py build_ext), so the test extra
    # brings the build tools into the environment: pip builds seqex itself in isolation.
    extras_require={"bench": ["redis>=5", "hiredis>=2"],
                    "test": ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100",
                             "cython>=3.0", "setuptools>=65", "wheel"]},
    entry_points={"console_scripts": ["seqex = deploy.entry:main"]},
    zip_safe=False,
)
