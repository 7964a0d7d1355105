"""Tether's domain: fixes, device events, zones, schedules and the rules that judge them.

Pure code only: no I/O and no clock reads. Every other package imports from here.
"""
