# SPDX-License-Identifier: Apache-2.0
"""The attribution server for a benchmark: one model, as model "m", on a free loopback port."""
import os
import subprocess
import time


def serve(server, model_dir, work):
    """Starts SERVER on MODEL_DIR (its port file in WORK); returns (process, port) once it listens."""
    port_file = os.path.join(work, "ports")
    process = subprocess.Popen([server, f"--model=m={model_dir}", "--listen=127.0.0.1:0", "--metrics_listen=",
                                f"--port_file={port_file}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if process.poll() is not None:
            raise RuntimeError(f"server exited on {model_dir}")
        time.sleep(0.2)
    return process, open(port_file).read().split()[0]
