//! Everything the agent knows about talking to mysqld: the flavor
//! differences and the observer that keeps one connection open.

pub mod control;
pub mod flavor;
pub mod links;
pub mod observer;
pub mod process;
pub mod tls;
pub mod verify;
