//! placeholder: the plain-process runtime
