//! A reset function written into a policy's core module, so that one instance can serve
//! request after request and still start each one in the state a new instance would have.
//!
//! Why: a fresh instance per request (the default) cost about 12 µs of CPU per hit inside the
//! proxy, most of it wasmtime setting up and tearing down a store, a component instance and a
//! pool slot. Restoring a small module's state is a `memory.fill` and a few `memory.init`s.
//!
//! What the injected `cachet-reset` export does, in the module's own code:
//! - refuses (returns false) when the memory has grown: a memory cannot shrink, so the host
//!   drops that instance and makes a new one;
//! - writes the initial memory back: zeros everywhere, then every data segment from a passive
//!   copy of itself;
//! - sets every mutable global back to its initial constant.
//!
//! That is all the state a core module has when it leaves tables, segments and imports alone,
//! which [`inject`] checks for before writing anything: a module that could change a table,
//! drop a segment, run a start function or hold state outside its one memory is left as it
//! is, and its instances are re-created per request as before. The host writes this function
//! itself and trusts only a reset it wrote: a plugin cannot supply its own.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, DataCountSection, DataSection, ExportKind, ExportSection, Function,
    FunctionSection, Instruction, Module, RawSection, TypeSection, ValType,
};
use wasmparser::{CompositeInnerType, DataKind, ExternalKind, Operator, Parser, Payload, TypeRef};

/// The export the host calls between two requests.
pub const RESET_EXPORT: &str = "cachet-reset";

/// The world that declares [`RESET_EXPORT`], merged into the policy's own world.
const RESET_WORLD: &str =
    "package cachet:reset;\nworld reset {\n  export cachet-reset: func() -> bool;\n}\n";

/// Larger initial memories are cheaper to re-create than to rewrite per request (wasmtime
/// then keeps only part of them resident, `engine.rs`).
const MAX_RESET_PAGES: u64 = 64;

const PAGE_BYTES: u64 = 64 * 1024;

/// `module` (a core module with its `component-type` world) with the reset export added and
/// declared in its world, or the reason it cannot be reset safely.
pub fn inject(module: &[u8]) -> Result<Vec<u8>, String> {
    // The rewrite below reads the module as a valid one would be (a type section before
    // the functions, say): the plugin's bytes are checked first, not trusted.
    wasmparser::Validator::new()
        .validate_all(module)
        .map_err(|e| format!("not a valid module: {e}"))?;
    let layout = Layout::read(module)?;
    let mut rewritten = rewrite(module, &layout)?;
    declare_in_world(&mut rewritten)?;
    Ok(rewritten)
}

/// What the reset needs to know about a module, and proof it can be reset.
#[derive(Default)]
struct Layout {
    imported_functions: u32,
    defined_functions: u32,
    memory_pages: u64,
    /// Mutable globals: index and initial value.
    globals: Vec<(u32, ConstValue)>,
    /// Active data segments: offset and bytes, in order.
    segments: Vec<(u32, Vec<u8>)>,
    /// Every data segment's index is kept; the copies come after them.
    existing_segments: u32,
    has_data_count: bool,
    exports: u32,
    /// Whether each global is mutable, by index.
    mutable: Vec<bool>,
}

#[derive(Clone, Copy)]
enum ConstValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

impl Layout {
    fn read(module: &[u8]) -> Result<Self, String> {
        let mut layout = Layout::default();
        let mut memories = 0;
        for payload in Parser::new(0).parse_all(module) {
            let payload = payload.map_err(|e| format!("not a valid module: {e}"))?;
            layout.read_payload(payload, &mut memories)?;
        }
        if memories != 1 {
            return Err(format!("it defines {memories} memories, not one"));
        }
        // The rewrite adds to the type, function, export and code sections: all must exist.
        if layout.defined_functions == 0 || layout.exports == 0 {
            return Err("it defines or exports no function".into());
        }
        Ok(layout)
    }

    fn read_payload(&mut self, payload: Payload<'_>, memories: &mut u32) -> Result<(), String> {
        let invalid = |e: wasmparser::BinaryReaderError| format!("not a valid module: {e}");
        match payload {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                return Err("not a core module".into());
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.map_err(invalid)?.into_types() {
                        if !matches!(ty.composite_type.inner, CompositeInnerType::Func(_)) {
                            return Err("it uses garbage-collected types".into());
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    // WASI functions hand out host resources (streams, pollables) that would
                    // outlive a reset in the store; the policy interfaces hand out none.
                    if !import.module.starts_with("cachet:policy/") {
                        return Err(format!(
                            "it imports {} (only cachet:policy is reset)",
                            import.module
                        ));
                    }
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => self.imported_functions += 1,
                        _ => return Err("it imports state (a memory, table, global or tag)".into()),
                    }
                }
            }
            Payload::FunctionSection(reader) => self.defined_functions = reader.count(),
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(invalid)?;
                    if memory.memory64 || memory.shared || memory.page_size_log2.is_some() {
                        return Err("its memory is 64-bit, shared or of custom page size".into());
                    }
                    if memory.initial > MAX_RESET_PAGES {
                        return Err(format!(
                            "its memory starts at {} pages, more than {MAX_RESET_PAGES}",
                            memory.initial
                        ));
                    }
                    self.memory_pages = memory.initial;
                    *memories += 1;
                }
            }
            Payload::TagSection(_) => return Err("it defines exception tags".into()),
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.into_iter().enumerate() {
                    let global = global.map_err(invalid)?;
                    self.mutable.push(global.ty.mutable);
                    if global.ty.mutable {
                        let value = const_value(&global.init_expr)
                            .ok_or("a mutable global starts from a non-constant value")?;
                        self.globals.push((index as u32, value));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    self.exports += 1;
                    // wit-component reads names in two styles: `_initialize` is also
                    // `cm32p2_initialize`, and `name` also `cm32p2||name`. An initializer
                    // known by the second name ran at instantiation, and the reset undid it
                    // after every request.
                    let name = export
                        .name
                        .strip_prefix("cm32p2")
                        .map_or(export.name, |n| n.strip_prefix("||").unwrap_or(n));
                    // Any name built on the reset's: wit-component would take
                    // `cabi_post_cachet-reset` (or `cm32p2||cachet-reset_post`) for the
                    // reset's post-return, plugin code wasmtime runs right after every reset.
                    if export.name.contains(RESET_EXPORT) {
                        return Err(format!("it already exports {}", export.name));
                    }
                    if name == "_initialize" {
                        return Err(format!("it has an initializer ({})", export.name));
                    }
                    // Rust exports `__data_end` and `__heap_base`: constants are harmless.
                    let constant = export.kind == ExternalKind::Global
                        && self.mutable.get(export.index as usize) == Some(&false);
                    if !matches!(export.kind, ExternalKind::Func | ExternalKind::Memory)
                        && !constant
                    {
                        return Err("it exports a table, a mutable global or a tag".into());
                    }
                }
            }
            Payload::StartSection { .. } => return Err("it has a start function".into()),
            Payload::DataCountSection { .. } => self.has_data_count = true,
            Payload::CodeSectionEntry(body) => {
                let mut operators = body.get_operators_reader().map_err(invalid)?;
                while !operators.eof() {
                    if let Some(what) = state_changing(&operators.read().map_err(invalid)?) {
                        return Err(format!("its code uses {what}"));
                    }
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(invalid)?;
                    self.existing_segments += 1;
                    match data.kind {
                        DataKind::Active {
                            memory_index: 0,
                            offset_expr,
                        } => match const_value(&offset_expr) {
                            Some(ConstValue::I32(offset)) => {
                                self.segments.push((offset as u32, data.data.to_vec()))
                            }
                            _ => return Err("a data segment has a computed offset".into()),
                        },
                        _ => return Err("it has passive data segments".into()),
                    }
                }
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                return Err("not a core module".into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// Operators whose effect the reset would not undo.
fn state_changing(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. }
        | Operator::TableGrow { .. }
        | Operator::TableFill { .. }
        | Operator::TableCopy { .. }
        | Operator::TableInit { .. } => "table writes",
        Operator::ElemDrop { .. } | Operator::DataDrop { .. } => "segment drops",
        Operator::MemoryInit { .. } => "passive segments",
        _ => return None,
    })
}

/// The value of a constant expression made of one constant.
fn const_value(expr: &wasmparser::ConstExpr<'_>) -> Option<ConstValue> {
    let mut reader = expr.get_operators_reader();
    let value = match reader.read().ok()? {
        Operator::I32Const { value } => ConstValue::I32(value),
        Operator::I64Const { value } => ConstValue::I64(value),
        Operator::F32Const { value } => ConstValue::F32(value.bits()),
        Operator::F64Const { value } => ConstValue::F64(value.bits()),
        _ => return None,
    };
    matches!(reader.read().ok()?, Operator::End).then_some(value)
}

/// The module again, section by section, with the reset's type, function, export, body and
/// segment copies added. Everything else is copied byte for byte; the new function comes
/// last, so no existing index moves.
fn rewrite(module: &[u8], layout: &Layout) -> Result<Vec<u8>, String> {
    let cannot = |e: wasm_encoder::reencode::Error| format!("cannot rewrite: {e}");
    let mut out = Module::new();
    let mut reset_type = None;
    let mut code = None::<CodeSection>;
    let reset_index = layout.imported_functions + layout.defined_functions;
    let total_segments = layout.existing_segments + layout.segments.len() as u32;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| cannot(e.into()))?;
        match payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                let existing = reader.count();
                RoundtripReencoder
                    .parse_type_section(&mut types, reader)
                    .map_err(cannot)?;
                types.ty().function([], [ValType::I32]);
                reset_type = Some(existing);
                out.section(&types);
            }
            Payload::FunctionSection(reader) => {
                let mut functions = FunctionSection::new();
                for ty in reader {
                    functions.function(ty.map_err(|e| cannot(e.into()))?);
                }
                let Some(reset_type) = reset_type else {
                    return Err("functions without a type section".into());
                };
                functions.function(reset_type);
                out.section(&functions);
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                RoundtripReencoder
                    .parse_export_section(&mut exports, reader)
                    .map_err(cannot)?;
                exports.export(RESET_EXPORT, ExportKind::Func, reset_index);
                out.section(&exports);
            }
            Payload::DataCountSection { .. } => {
                out.section(&DataCountSection {
                    count: total_segments,
                });
            }
            Payload::CodeSectionStart { .. } => {
                if !layout.has_data_count {
                    out.section(&DataCountSection {
                        count: total_segments,
                    });
                }
                code = Some(CodeSection::new());
            }
            Payload::CodeSectionEntry(body) => {
                let range = body.range();
                if let Some(code) = code.as_mut() {
                    code.raw(&module[range.start as usize..range.end as usize]);
                }
            }
            Payload::DataSection(reader) => {
                if let Some(mut code) = code.take() {
                    code.function(&reset_function(layout));
                    out.section(&code);
                }
                let mut data = DataSection::new();
                for segment in reader {
                    let segment = segment.map_err(|e| cannot(e.into()))?;
                    data.raw(&module[segment.range.start as usize..segment.range.end as usize]);
                }
                for (_, bytes) in &layout.segments {
                    data.passive(bytes.iter().copied());
                }
                out.section(&data);
            }
            other => {
                if let Some(mut code) = code.take() {
                    // A module without a data section: the code section ends here.
                    code.function(&reset_function(layout));
                    out.section(&code);
                }
                if let Some((id, range)) = other.as_section() {
                    out.section(&RawSection {
                        id,
                        data: &module[range.start as usize..range.end as usize],
                    });
                }
            }
        }
    }
    Ok(out.finish())
}

/// `() -> i32`: 1 once the memory and globals are as a new instance has them, 0 (and nothing
/// touched) when the memory has grown.
fn reset_function(layout: &Layout) -> Function {
    let mut f = Function::new([]);
    let memory_bytes = layout.memory_pages * PAGE_BYTES;
    f.instruction(&Instruction::MemorySize(0))
        .instruction(&Instruction::I32Const(layout.memory_pages as i32))
        .instruction(&Instruction::I32Ne)
        .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::Return)
        .instruction(&Instruction::End);
    // Zeros where no segment writes, then the segments in their own order (a later one may
    // overwrite an earlier one, as at instantiation).
    for (start, len) in gaps(&layout.segments, memory_bytes) {
        f.instruction(&Instruction::I32Const(start as i32))
            .instruction(&Instruction::I32Const(0))
            .instruction(&Instruction::I32Const(len as i32))
            .instruction(&Instruction::MemoryFill(0));
    }
    for (i, (offset, bytes)) in layout.segments.iter().enumerate() {
        f.instruction(&Instruction::I32Const(*offset as i32))
            .instruction(&Instruction::I32Const(0))
            .instruction(&Instruction::I32Const(bytes.len() as i32))
            .instruction(&Instruction::MemoryInit {
                mem: 0,
                data_index: layout.existing_segments + i as u32,
            });
    }
    for (index, value) in &layout.globals {
        f.instruction(&match *value {
            ConstValue::I32(v) => Instruction::I32Const(v),
            ConstValue::I64(v) => Instruction::I64Const(v),
            ConstValue::F32(bits) => Instruction::F32Const(f32::from_bits(bits).into()),
            ConstValue::F64(bits) => Instruction::F64Const(f64::from_bits(bits).into()),
        })
        .instruction(&Instruction::GlobalSet(*index));
    }
    f.instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::End);
    f
}

/// The byte ranges `(start, len)` of `0..memory_bytes` no segment covers.
fn gaps(segments: &[(u32, Vec<u8>)], memory_bytes: u64) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = segments
        .iter()
        .map(|(offset, bytes)| (u64::from(*offset), u64::from(*offset) + bytes.len() as u64))
        .collect();
    covered.sort_unstable();
    let mut gaps = Vec::new();
    let mut cursor = 0;
    for (start, end) in covered {
        if start > cursor {
            gaps.push((cursor, start - cursor));
        }
        cursor = cursor.max(end);
    }
    if memory_bytes > cursor {
        gaps.push((cursor, memory_bytes - cursor));
    }
    gaps
}

/// Adds a `component-type` section declaring the reset export; wit-component merges it with
/// the policy's own world when it builds the component.
fn declare_in_world(module: &mut Vec<u8>) -> Result<(), String> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("cachet-reset.wit", RESET_WORLD)
        .map_err(|e| format!("reset world: {e:#}"))?;
    let world = resolve
        .select_world(&[package], Some("reset"))
        .map_err(|e| format!("reset world: {e:#}"))?;
    wit_component::embed_component_metadata(
        module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| format!("reset world: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Memory, Store};

    /// One page with a data segment and two mutable globals, and a function that changes
    /// all of it (and, given 1, grows the memory).
    const MODULE: &str = r#"
        (module
          (memory (export "memory") 1)
          (global $sp (mut i32) (i32.const 4096))
          (global $big (mut i64) (i64.const -7))
          (global $fixed i32 (i32.const 3))
          (data (i32.const 1024) "initial state")
          (data (i32.const 1030) "STATE")
          (func (export "scribble") (param $grow i32)
            (i32.store (i32.const 1024) (i32.const 0x41414141))
            (i64.store (i32.const 60000) (i64.const -1))
            (global.set $sp (i32.const 1))
            (global.set $big (i64.const 99))
            (if (local.get $grow) (then (drop (memory.grow (i32.const 1))))))
          (func (export "sp") (result i32) global.get $sp)
          (func (export "big") (result i64) global.get $big))
    "#;

    fn instance(wasm: &[u8]) -> (Store<()>, Instance, Memory) {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, wasm).expect("valid module");
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
        let memory = instance.get_memory(&mut store, "memory").expect("memory");
        (store, instance, memory)
    }

    fn call<R: wasmtime::WasmResults>(store: &mut Store<()>, instance: &Instance, name: &str) -> R {
        let func = instance
            .get_typed_func::<(), R>(&mut *store, name)
            .expect(name);
        func.call(store, ()).expect(name)
    }

    #[test]
    fn the_reset_restores_memory_and_globals_as_instantiation_left_them() {
        let wasm = inject(&wat::parse_str(MODULE).unwrap()).expect("resettable");
        let (mut store, instance, memory) = instance(&wasm);
        let initial = memory.data(&store).to_vec();
        assert_eq!(&initial[1024..1037], b"initiaSTATEte");

        let scribble = instance
            .get_typed_func::<i32, ()>(&mut store, "scribble")
            .unwrap();
        scribble.call(&mut store, 0).unwrap();
        assert_ne!(memory.data(&store), &initial[..]);
        assert_eq!(call::<i32>(&mut store, &instance, "sp"), 1);

        assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 1);
        assert!(memory.data(&store) == &initial[..], "memory restored");
        assert_eq!(call::<i32>(&mut store, &instance, "sp"), 4096);
        assert_eq!(call::<i64>(&mut store, &instance, "big"), -7);
    }

    #[test]
    fn a_grown_memory_is_refused_and_left_alone() {
        let wasm = inject(&wat::parse_str(MODULE).unwrap()).expect("resettable");
        let (mut store, instance, memory) = instance(&wasm);
        let scribble = instance
            .get_typed_func::<i32, ()>(&mut store, "scribble")
            .unwrap();
        scribble.call(&mut store, 1).unwrap();
        assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 0);
        assert_eq!(call::<i32>(&mut store, &instance, "sp"), 1);
        assert_eq!(memory.data(&store)[1024], 0x41);
    }

    #[test]
    fn gaps_cover_what_no_segment_writes() {
        let segments = vec![(10, vec![0; 5]), (12, vec![0; 10]), (40, vec![0; 2])];
        assert_eq!(gaps(&segments, 64), [(0, 10), (22, 18), (42, 22)]);
        assert_eq!(gaps(&[], 64), [(0, 64)]);
    }

    #[test]
    fn modules_with_state_the_reset_cannot_restore_are_refused_with_the_reason() {
        let refused = |body: &str| {
            let text = format!("(module (memory 1) (func (export \"f\")) {body})");
            inject(&wat::parse_str(&text).unwrap()).expect_err(body)
        };
        let table = "(table 1 funcref) (func (table.set (i32.const 0) (ref.null func)))";
        assert!(refused(table).contains("table writes"));
        assert!(refused("(func $s) (start $s)").contains("start function"));
        assert!(refused("(data \"passive\")").contains("passive data segments"));
        assert!(refused("(global (export \"g\") (mut i32) (i32.const 0))").contains("exports a"));
        let imported =
            "(module (import \"cachet:policy/host@0.3.0\" \"m\" (memory 1)) (func (export \"f\")))";
        let err = inject(&wat::parse_str(imported).unwrap()).unwrap_err();
        assert!(err.contains("imports state"), "{err}");
        let wasi = "(module (import \"wasi:io/poll@0.2.6\" \"poll\" (func)) (memory 1) (func (export \"f\")))";
        let err = inject(&wat::parse_str(wasi).unwrap()).unwrap_err();
        assert!(err.contains("imports wasi:io/poll@0.2.6"), "{err}");
        let big = "(module (memory 65) (func (export \"f\")))";
        let err = inject(&wat::parse_str(big).unwrap()).unwrap_err();
        assert!(err.contains("65 pages"), "{err}");
        // An initializer by either of its names: the reset would undo it after each request.
        for name in ["_initialize", "cm32p2_initialize"] {
            let err = refused(&format!("(func (export \"{name}\"))"));
            assert!(err.contains("initializer") && err.contains(name), "{err}");
        }
        // Or a name wit-component would attach to the reset: its post-return, plugin code run
        // after every reset.
        let reset_names = [
            "cachet-reset",
            "cm32p2||cachet-reset",
            "cabi_post_cachet-reset",
            "cm32p2||cachet-reset_post",
            "[async-lift]cachet-reset",
        ];
        for name in reset_names {
            let err = refused(&format!("(func (export \"{name}\"))"));
            assert!(err.contains("already exports"), "{err}");
        }
    }

    /// A module whose function section names a type no type section declares (invalid:
    /// the rewrite used to assume the type section and panicked the reload thread).
    #[test]
    fn an_invalid_module_is_refused_not_a_panic() {
        use wasm_encoder::{
            CodeSection, ExportSection, Function, FunctionSection, Instruction, MemorySection,
            MemoryType,
        };
        let mut module = Module::new();
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut exports = ExportSection::new();
        exports.export("f", ExportKind::Func, 0);
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        let err = inject(&module.finish()).unwrap_err();
        assert!(err.contains("not a valid module"), "{err}");
    }
}
