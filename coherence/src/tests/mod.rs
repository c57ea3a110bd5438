//! Host tests of the engine: exact message counts per case, the model checker and the
//! simulator.

mod cluster;
mod counts;
mod model;
mod planted;
mod refusals;
mod robust;
mod sim;
