"""Running a node as the process: start-up, spin, Ctrl-C and shutdown.

Configuration errors (a bad parameter, missing weights, bad --ros-args) end the process with
one line on stderr and exit code 2, no traceback. Ctrl-C ends it with 0, also while the models
load or a frame is in progress; a second Ctrl-C leaves without waiting for the frame.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import threading
import traceback
from typing import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

from .. import params as P
from ..engine.weights import WeightsError


def _fatal(message: str) -> int:
    # Configuration errors are the user's to fix: one clear line, no traceback, exit code 2.
    print(f"[match_node] fatal: {message}", file=sys.stderr, flush=True)
    return 2


def _init_rclpy(args: list[str] | None) -> None:
    """rclpy.init without rcl's extra "[ERROR] [rcl]: Failed to parse global arguments" line.

    On bad --ros-args rcl logs that line to stderr and then raises an RCLError saying what
    was wrong; main prints the latter as the one line. Everything else rcl writes while
    initialising (e.g. a warning about the namespace) is passed on.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold back (a daemon): nothing to tidy either
        rclpy.init(args=args)
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            rclpy.init(args=args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if "Failed to parse global arguments" not in line:
                    sys.stderr.write(line)
            sys.stderr.flush()


def _rcl_message(error: Exception) -> str:
    # rcl appends the C source location of each error (", at /project/src/...c:415").
    return re.sub(r",? at /\S+:\d+", "", " ".join(str(error).split()))


def run(node_class: Callable[[], Node], args: list[str] | None = None) -> int:
    """Initialise rclpy with `args`, build a `node_class` and spin it until Ctrl-C or
    shutdown; the process's exit code (2: a configuration error, told in one line)."""
    node = None
    try:
        try:
            _init_rclpy(args)
            node = node_class()
        except (P.ParameterError, WeightsError) as error:
            return _fatal(str(error))
        except ParameterException as error:
            return _fatal(f"parameter: {error}")  # rclpy's own checks, should ours miss one
        except _rclpy.RCLError as error:
            # Bad --ros-args: unreadable --params-file, malformed remapping, bad name.
            return _fatal(f"bad ROS arguments: {_rcl_message(error)}")
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0  # Ctrl-C while loading the models
        except Exception as error:  # noqa: BLE001 - start-up: one line instead of a traceback
            if os.environ.get("MATCH_NODE_DEBUG"):
                traceback.print_exc()
            return _fatal(f"start-up failed: {type(error).__name__}: {error} "
                          "(MATCH_NODE_DEBUG=1 shows the traceback)")
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C: the worker notices the context is gone and ends quietly
        return 0
    finally:
        _shut_down(node)


def _shut_down(node: Node | None) -> None:
    try:
        if node is not None:
            node.destroy_node()  # waits for the frame in progress
        rclpy.try_shutdown()  # also restores Python's own SIGINT handler
        # Finalising an interpreter that loaded torch takes a moment; a Ctrl-C in it would
        # kill the process by the signal (exit -2) instead of ending it cleanly.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:
        _leave_now()  # a second Ctrl-C: the user wants out without waiting for the frame
    worker = getattr(node, "_worker", None)
    if worker is not None and worker.is_alive():
        _leave_now()  # a frame outlasted the wait


def _leave_now() -> None:
    # The worker may still be inside torch, and the node not destroyed. Finalising the
    # interpreter under a running daemon thread in C++ code aborts ("terminate called
    # without an active exception", exit -6), so leave without finalising. The output
    # streams are flushed; DDS peers notice the participant is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
