"""Transports: adapters that drive the engine (``rayref.core``) over some medium.

``transports.base`` states the contract; ``transports.sim`` drives the engine on SimPy in
virtual time, inside one Python process.
"""
