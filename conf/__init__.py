# Makes conf/ a package so it ships inside the wheel as `mnist_arch.conf` (see pyproject.toml)
# and Hydra finds it as pkg://mnist_arch.conf from a checkout and from an installed wheel alike.
