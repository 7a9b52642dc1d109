"""credgui's napari dock widgets and pyqtgraph plots (the only Qt code in credgui).

Widgets only call the science core (``credgui.jobs``, ``credgui.metrics``, ``credgui.relion``);
disk reads and maths run in ``napari.qt.threading.thread_worker`` generators and layers are
updated in the slots, on the GUI thread. Nothing is re-exported here: ``import credgui`` and the
core stay free of Qt.
"""
