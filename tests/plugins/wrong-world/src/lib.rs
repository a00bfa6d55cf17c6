//! A valid component of another world entirely: it exports a greeting, not a
//! repeatd payload format or auth method.

wit_bindgen::generate!({
    inline: "
        package example:greeter@1.0.0;
        interface greet {
            hello: func(name: string) -> string;
        }
        world greeter {
            export greet;
        }
    ",
    world: "greeter",
});

use exports::example::greeter::greet::Guest;

struct Greeter;

impl Guest for Greeter {
    fn hello(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
