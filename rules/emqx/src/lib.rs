//! sluice-rule-emqx
