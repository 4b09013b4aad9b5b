// Entry point of the `@sluice/sdk` package for the AssemblyScript compiler (`import … from
// "@sluice/sdk"` resolves here). The API lives in ./assembly/.
export * from "./assembly/index";
