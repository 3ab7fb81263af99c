"""Built-in mwga components, registered through the `mwga` entry-point group like any plugin."""
