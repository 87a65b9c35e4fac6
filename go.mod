module vbcache

go 1.26.8
