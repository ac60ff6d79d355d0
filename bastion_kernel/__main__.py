"""`python -m bastion_kernel -f {connection_file}` starts the kernel (see `launch.py`)."""

from .launch import main

main()
