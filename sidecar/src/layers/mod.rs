//! The serving path's tower layers, one module each. They are assembled, outermost first and
//! each with the reason it sits where it does, in [`crate::server::stack`].

pub mod body_limit;
pub mod host;
pub mod request_id;
pub mod router;
