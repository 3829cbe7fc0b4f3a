#!/usr/bin/env python3

import test_runner

if __name__ == '__main__':
    modules = [
        'implicit_connect'
    ]
    test_runner.run_unittests(modules)
