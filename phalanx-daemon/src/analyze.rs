//! `phalanx analyze`: offline analysis of capture files.
