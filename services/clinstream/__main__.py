"""`python -m clinstream`: the same as the `clinstream` console command."""

from clinstream.cli import main

main()
