module.exports = async (context) => {
  const name = (context.request.query && context.request.query.name) || "world";
  return { status: 200, body: `Hello, ${name}, from node!\n` };
};
