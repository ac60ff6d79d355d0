"""`python -m bastion_kernel -f {connection_file}` starts the kernel."""

from .kernel import main

main()
