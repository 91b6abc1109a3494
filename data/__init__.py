"Data files shipped with sd_scratch (installed as the package `sd_scratch.assets`); see README.md here."
