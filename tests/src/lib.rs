//! Test support for ipnat: packets built with an independent checksum implementation,
//! network namespaces with `Drop` guards, captures, and the gateway lab used by the
//! integration tests and by `cargo xtask lab`.
pub mod benchkit;
pub mod bird;
pub mod capture;
pub mod etcd;
pub mod fakecloud;
pub mod hostlab;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod sock;
pub mod testrun;
