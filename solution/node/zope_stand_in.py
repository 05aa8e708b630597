"""A stand-in for zope.interface, which gevent imports only to declare its loop's interfaces.

Rule: declarations only. Nothing in a node queries an interface, so these names do nothing; the
real package would cost every start its import. `python -m node` registers this module as
`zope.interface` before gevent loads, unless the real one is loaded already (__main__.py)."""


class Interface:
    """gevent's interface classes derive from this; their methods are documentation only."""


class Attribute:
    def __init__(self, doc=""):
        self.__doc__ = doc


def implementer(*interfaces):
    return lambda cls: cls


def classImplements(cls, *interfaces):
    """Declares nothing."""
