//! The HTTP front end against a scripted fake backend, over real sockets.

mod endpoints;
mod errors;
mod generate;
mod support;
