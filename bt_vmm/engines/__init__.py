"""Execution engines: how guest CPL0 code is run on the shared vCPU, devices and memory."""
