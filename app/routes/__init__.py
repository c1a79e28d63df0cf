"""Thin route modules: validate, call the engine, render PNG or JSON."""
