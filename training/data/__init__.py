"""Episode data: collect from MuJoCo tasks, import robot bags, read and write episode files, view a task.

Separate from fitting: the code that knows the HDF5 episode format (docs/data-format.md) lives here.
"""
