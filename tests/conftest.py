"""Test order: the full-size SD 1.x training test runs first, while the pytest process is still small (its training process alone peaks near 20 GB of the machine's 24). Marker `slow`: tests that take minutes (CI runs them all; `pytest -m "not slow"` skips them)."""


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes minutes (a real browser, full-size models); CI runs it')




def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 0 if item.path.name == 'test_sd15_cpu.py' else 1)   # a stable sort: the rest keep their order

