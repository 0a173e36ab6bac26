// ESLint for the sidebar's TypeScript: the recommended rules of ESLint and typescript-eslint,
// with formatting left to prettier (eslint-config-prettier turns the overlapping rules off).
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'node_modules/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['src/**/*.ts'],
    rules: {
      // A CommandIDs namespace and a Private namespace of helpers, as JupyterLab's own extensions do.
      '@typescript-eslint/no-namespace': 'off',
      eqeqeq: ['error', 'smart'],
      curly: ['error', 'all'],
      '@typescript-eslint/no-unused-vars': ['error', { args: 'none' }],
      '@typescript-eslint/naming-convention': [
        'error',
        { selector: 'interface', format: ['PascalCase'] }
      ]
    }
  },
  prettier
);
